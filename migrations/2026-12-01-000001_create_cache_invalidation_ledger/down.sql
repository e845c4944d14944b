DROP TABLE cache_invalidation_ledger;
