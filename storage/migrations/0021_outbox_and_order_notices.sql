-- The transactional outbox, and what the order follow-up job writes.

-- Jobs asked for inside other transactions (an order's follow-up, in the order's own
-- statement): one narrow row with one index, so the asking transaction stays cheap. The relay
-- turns them into jobs (and deletes them) in one transaction of its own: each becomes exactly
-- one job, and only if the transaction that wrote it committed.
CREATE TABLE job_outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type       text NOT NULL,
    owner_id   text,
    params     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The confirmation a customer is sent for an order, once. (This service has no mail
-- transport; a sender reads these rows.) One per order and kind.
CREATE TABLE order_notices (
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('confirmation')),
    user_id    bigint NOT NULL REFERENCES users (id),
    subject    text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);

CREATE INDEX order_notices_user ON order_notices (user_id, created_at DESC);

-- The sales report reads orders by date range, oldest first.
CREATE INDEX orders_created ON orders (created_at, id);
