-- pg_cep 0.1.0 -> 0.2.0. Changes of 0.2.0 are added here as they land in sql/; the upgrade
-- must leave the catalog identical to a fresh install of 0.2.0 (tests/test_upgrade.py).
\echo Use "ALTER EXTENSION pg_cep UPDATE TO '0.2.0'" to load this file. \quit
SET LOCAL search_path = pg_catalog, pg_temp;

-- Last: rebuild every stream's generated ingest function with this version's generator.
SELECT cep._regenerate_stream(s.stream_id)
FROM cep.streams AS s
ORDER BY s.stream_id;
