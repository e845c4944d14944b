#!/bin/sh
# Run once by the postgres image when it initializes its data directory: lets the Compose
# `replica` profile's streaming replica connect for replication (pg_basebackup, then
# streaming), with the password, like any other client of this network.
set -eu
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
