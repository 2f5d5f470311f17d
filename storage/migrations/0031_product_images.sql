-- A product's image: an uploaded image file, attached by staff. Its thumbnail is made by a
-- job; until the jobs queue reports it, the thumbnail's state is kept here.
CREATE TABLE product_images (
    product_id      bigint PRIMARY KEY REFERENCES products (id) ON DELETE CASCADE,
    file_id         uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    thumbnail_state text NOT NULL DEFAULT 'queued'
        CHECK (thumbnail_state IN ('queued', 'running', 'succeeded', 'failed')),
    thumbnail_error text,
    attached_by     text NOT NULL,
    attached_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX product_images_file ON product_images (file_id);
CREATE INDEX product_images_unfinished ON product_images (product_id)
    WHERE thumbnail_state IN ('queued', 'running');

CREATE TRIGGER product_images_updated_at BEFORE UPDATE ON product_images
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
