-- Grant recipe for three kinds of roles (pg_cep never creates roles itself). Create the roles
-- first, e.g.: CREATE ROLE cep_admin; CREATE ROLE cep_writer; CREATE ROLE cep_reader;
-- then run this file as the role that installed pg_cep. tests/test_security.py runs it as is.

-- Admin: defines streams (and what is built on them). Must own the event tables it registers;
-- the generated ingest functions are created by, owned by and run as this role.
GRANT USAGE, CREATE ON SCHEMA cep TO cep_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA cep TO cep_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cep TO cep_admin;

-- Writer: inserts events. It needs nothing in schema cep, only INSERT on the event tables,
-- which their owner grants, e.g.: GRANT INSERT ON public.transactions TO cep_writer;
-- (plus USAGE on the id sequence when the id is serial).

-- Reader: monitoring views, alerts and durable alert consumers.
GRANT USAGE ON SCHEMA cep TO cep_reader;
GRANT SELECT ON cep.stream_stats, cep.dashboard, cep.consumer_stats, cep.window_stats,
cep.alerts, cep.streams, cep.late_events, cep.rule_stats, cep.risk_assessments TO cep_reader;
GRANT EXECUTE ON FUNCTION cep.timeline(text, interval, interval),
cep.create_consumer(text, boolean, interval), cep.drop_consumer(text),
cep.poll_alerts(text, integer), cep.ack_alerts(text, bigint []), cep.metrics() TO cep_reader;
-- Reader of recommendations: cep.recommend and cep.similar_items run with the caller's rights
-- and read the recommender state; cep.user_recommendations calls cep.recommend.
GRANT SELECT ON cep.user_recommendations, cep.recommender_stats, cep.recommenders,
cep.recommender_users, cep.recommender_weights, cep.recommender_pairs, cep.recommender_items
TO cep_reader;
GRANT EXECUTE ON FUNCTION cep.recommend(text, text, integer),
cep.similar_items(text, text, integer) TO cep_reader;
