//! A consumer of the service's change events for `make bench`: declares the exchange as the
//! service does (topic, durable) and a queue bound to it with `#`, so that published events
//! are routed and stored as they would be for a real consumer, then consumes and
//! acknowledges them until its standard input closes.
//!
//! Prints `ready` once the queue is bound, and `received <count>` when it stops.
//!
//! Usage: `event-sink <amqp url> <exchange>`.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arguments = std::env::args().skip(1);
    let (Some(url), Some(exchange)) = (arguments.next(), arguments.next()) else {
        return Err("usage: event-sink <amqp url> <exchange>".into());
    };
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await?;
    let bind = QueueBindOptions::default();
    channel.queue_bind(queue.name().clone(), exchange.as_str().into(), "#".into(), bind, FieldTable::default()).await?;
    channel.basic_qos(1_000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(queue.name().clone(), "event-sink".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    println!("ready");
    let mut stdin_closed = Box::pin(async {
        let mut buffer = [0_u8; 64];
        while tokio::io::stdin().read(&mut buffer).await.is_ok_and(|read| read > 0) {}
    });
    let mut received = 0_u64;
    loop {
        tokio::select! {
            () = &mut stdin_closed => break,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    received += 1;
                    // Every 100th acknowledges all before it.
                    if received.is_multiple_of(100) {
                        delivery.ack(BasicAckOptions { multiple: true }).await?;
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => break,
            },
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await;
    println!("received {received}");
    Ok(())
}
