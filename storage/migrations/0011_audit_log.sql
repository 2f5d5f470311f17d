-- The audit log of admin changes: who did what to which thing, when, and the before/after.
-- Range-partitioned by month so old months can be detached or dropped whole (retention)
-- and recent ones stay small; rows outside every monthly partition land in the default one.

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    bigint,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    before      jsonb,
    after       jsonb,
    request_id  text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

CREATE INDEX audit_log_recent ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, at DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at DESC);

-- Creates the monthly partitions (UTC months) from this month to `months_ahead` months on.
-- Idempotent; the service calls it at start and daily. A month whose rows already went to
-- the default partition is skipped rather than failing (they stay readable there).
CREATE FUNCTION audit_log_ensure_partitions(months_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    month_start timestamp;
    partition   text;
    created     integer := 0;
BEGIN
    FOR step IN 0..months_ahead LOOP
        month_start := first_month + make_interval(months => step);
        partition := format('audit_log_y%sm%s', to_char(month_start, 'YYYY'),
                            to_char(month_start, 'MM'));
        CONTINUE WHEN to_regclass(partition) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                partition,
                month_start AT TIME ZONE 'UTC',
                (month_start + interval '1 month') AT TIME ZONE 'UTC'
            );
            created := created + 1;
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'audit_log: % has rows in the default partition; not created', partition;
        END;
    END LOOP;
    RETURN created;
END;
$$;

SELECT audit_log_ensure_partitions(3);
