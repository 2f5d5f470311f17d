-- The catalog. Money is an integer count of the currency's minor unit (cents), never a float.
-- Stock can never go below zero: the database refuses it, whatever the code does.

CREATE TABLE products (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    price_minor bigint NOT NULL,
    currency    text NOT NULL,
    stock       integer NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CONSTRAINT products_stock_nonnegative CHECK (stock >= 0),
    CONSTRAINT products_price_nonnegative CHECK (price_minor >= 0),
    CONSTRAINT products_currency_code CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT products_sku_format CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    CONSTRAINT products_name_length CHECK (length(name) BETWEEN 1 AND 200),
    CONSTRAINT products_description_length CHECK (length(description) <= 5000)
);

CREATE TRIGGER products_updated_at BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A SKU names one live product; a deleted product's SKU may be used again.
CREATE UNIQUE INDEX products_sku_key ON products (sku) WHERE deleted_at IS NULL;

-- Keyset pagination for each sort order, over live products.
CREATE INDEX products_by_price ON products (price_minor, id) WHERE deleted_at IS NULL;
CREATE INDEX products_by_name ON products (name, id) WHERE deleted_at IS NULL;
-- Substring search on names (ILIKE '%text%').
CREATE INDEX products_name_trgm ON products USING gin (name gin_trgm_ops) WHERE deleted_at IS NULL;
