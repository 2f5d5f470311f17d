-- Orders: what was bought, at which price (captured when ordered), and every status change.

CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    status      text NOT NULL DEFAULT 'pending',
    total_minor bigint NOT NULL,
    currency    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_status CHECK (
        status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded')
    ),
    CONSTRAINT orders_total_nonnegative CHECK (total_minor >= 0),
    CONSTRAINT orders_currency_code CHECK (currency ~ '^[A-Z]{3}$')
);

CREATE TRIGGER orders_updated_at BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE INDEX orders_by_user ON orders (user_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);

CREATE TABLE order_items (
    order_id         bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id       bigint NOT NULL REFERENCES products (id),
    sku              text NOT NULL,
    name             text NOT NULL,
    quantity         integer NOT NULL,
    unit_price_minor bigint NOT NULL,
    PRIMARY KEY (order_id, product_id),
    CONSTRAINT order_items_quantity_positive CHECK (quantity > 0),
    CONSTRAINT order_items_price_nonnegative CHECK (unit_price_minor >= 0)
);

CREATE INDEX order_items_by_product ON order_items (product_id);

CREATE TABLE order_status_history (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status     text NOT NULL,
    changed_by bigint REFERENCES users (id) ON DELETE SET NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    note       text,
    CONSTRAINT order_status_history_note_length CHECK (length(note) <= 500)
);

CREATE INDEX order_status_history_by_order ON order_status_history (order_id, id);

-- Idempotency-Key records: the first completed response to a (user, scope, key), replayed
-- to retries with the same request. Written in the transaction that did the work, so the
-- work and its record commit together or not at all.
CREATE TABLE idempotency_keys (
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    status       integer NOT NULL,
    response     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, scope, key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
