-- Background jobs: durable job records, an ordered event log, and monthly partition upkeep.

-- One row per job. The row is the source of truth; the Redis stream only carries its id.
-- `dispatched_at IS NULL` makes the table its own transactional outbox: a job written inside
-- another transaction (an order's follow-up) is handed to its stream by the relay after commit.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    type             text NOT NULL,
    topic            text NOT NULL,
    owner_id         text,
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN (
                         'queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'cancelled'
                     )),
    params           jsonb NOT NULL DEFAULT '{}',
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    progress         smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message text,
    result           jsonb,
    error            text,
    idempotency_key  text,
    request_hash     text,
    cancel_requested boolean NOT NULL DEFAULT false,
    worker           text,
    lease_until      timestamptz,
    run_at           timestamptz,
    dispatched_at    timestamptz,
    last_seq         bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE TRIGGER jobs_updated_at BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC, id DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_state_created ON jobs (state, created_at DESC, id DESC);
CREATE INDEX jobs_dead ON jobs (finished_at DESC, id DESC) WHERE state = 'dead';
CREATE INDEX jobs_undispatched ON jobs (created_at) WHERE dispatched_at IS NULL;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- One job per caller and Idempotency-Key (system jobs have no owner).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(owner_id, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every state change and progress report of every job, in commit order. `seq` is global and
-- increasing, so one number resumes any subscription (one job, a user's jobs, a topic).
CREATE SEQUENCE job_event_seq;

CREATE TABLE job_events (
    seq        bigint NOT NULL,
    job_id     uuid NOT NULL,
    topic      text NOT NULL,
    owner_id   text,
    state      text NOT NULL,
    progress   smallint NOT NULL,
    message    text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (seq, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX job_events_job ON job_events (job_id, seq);
CREATE INDEX job_events_owner ON job_events (owner_id, seq);
CREATE INDEX job_events_topic ON job_events (topic, seq);

-- Rows whose month has no partition yet land here; ensure_monthly_partitions moves them out.
CREATE TABLE job_events_default PARTITION OF job_events DEFAULT;

-- Monthly range partitions named <parent>_pYYYYMM, for `months` months from `first`.
-- Rows already in <parent>_default for such a month are moved into the new partition.
CREATE FUNCTION ensure_monthly_partitions(parent text, first date, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month     date := date_trunc('month', first)::date;
    low       timestamptz;
    high      timestamptz;
    part      text;
    key       text;
    created   integer := 0;
BEGIN
    SELECT a.attname INTO STRICT key
      FROM pg_partitioned_table p
      JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
     WHERE p.partrelid = parent::regclass;
    FOR i IN 1..months LOOP
        part := format('%s_p%s', parent, to_char(month, 'YYYYMM'));
        low := month::timestamp AT TIME ZONE 'UTC';
        high := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part, parent);
            IF to_regclass(parent || '_default') IS NOT NULL THEN
                EXECUTE format(
                    'WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                    'INSERT INTO %I SELECT * FROM moved',
                    parent || '_default', key, low, key, high, part);
            END IF;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, low, high);
            created := created + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN created;
END;
$$;

-- Drops the range partitions of `parent` that hold only rows older than `cutoff`.
CREATE FUNCTION drop_partitions_before(parent text, cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    high    timestamptz;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent::regclass
    LOOP
        CONTINUE WHEN part.bound = 'DEFAULT';
        high := substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        IF high <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

SELECT ensure_monthly_partitions('job_events', (now() AT TIME ZONE 'UTC')::date, 3);
