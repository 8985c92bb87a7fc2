-- Reference read queries for applications. Applications read the stable view named
-- by the job's [output] table (here churn_scores); never a version table (churn_scores__v3),
-- which disappears when retention drops it. The view has the key columns, the model's
-- output columns and model_version, the version that served the row.

-- 1. Point lookup: the prediction for one key. Uses the active version's primary key.
SELECT proba_true, model_version
FROM churn_scores
WHERE customer_id = :customer_id;

-- 2. Batch lookup: predictions for a list of keys in one round trip.
SELECT customer_id, proba_true, model_version
FROM churn_scores
WHERE customer_id IN (:id1, :id2, :id3);

-- 3. Join with application data: predictions for the customers of one segment.
SELECT c.customer_id, c.monthly_charges, s.proba_true
FROM customers AS c
JOIN churn_scores AS s ON s.customer_id = c.customer_id
WHERE c.contract_months = 1
ORDER BY s.proba_true DESC
LIMIT 100;

-- 4. Which version is serving, and since when (for an audit trail next to a decision).
SELECT p.version, p.updated_at, v.logical_date, v.model_sha256, v.row_count
FROM pipeline_pointer AS p
JOIN pipeline_versions AS v ON v.table_name = p.table_name AND v.version = p.version
WHERE p.table_name = 'churn_scores' AND p.alias = 'champion';

-- 5. Debugging only: read one specific version's table directly (it disappears once
--    retention drops it, so applications never do this).
SELECT customer_id, proba_true
FROM churn_scores__v1
WHERE customer_id = :customer_id;

-- 6. A value for every key, predicted or not: keys outside the domain (new customers since
--    the last run) get the job's [output] default, served by the one-row view <table>__default.
SELECT c.customer_id,
       COALESCE(s.proba_true, d.proba_true) AS proba_true,
       s.model_version                      -- NULL: the default answered
FROM customers AS c
CROSS JOIN churn_scores__default AS d
LEFT JOIN churn_scores AS s ON s.customer_id = c.customer_id;

-- 7. An A/B split (`pipeline split churn_scores --alias challenger --percent 20`): one row per
--    key from the challenger or the champion. Log variant and model_version with the decision.
SELECT customer_id, proba_true, variant, model_version
FROM churn_scores__ab
WHERE customer_id = :customer_id;
