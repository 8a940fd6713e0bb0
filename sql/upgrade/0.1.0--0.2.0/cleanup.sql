-- 0.2.0, after the monitoring views are replaced: cep.dashboard computes its key estimate
-- itself (a view's functions run with its reader's rights), so 0.1.0's helper goes.
DROP FUNCTION cep._sketch_estimate(bigint);
