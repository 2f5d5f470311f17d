-- Uploaded files: the metadata. The bytes live in the file store under `storage_key`, a name
-- the server generated; the client's file name is kept only as data, never used as a path.
-- A derived file (a thumbnail) points at its source and goes when the source goes. A user
-- with files cannot be deleted (deactivate them, or delete their files, objects and all).
CREATE TABLE files (
    id            uuid PRIMARY KEY,
    owner_id      bigint NOT NULL REFERENCES users (id),
    original_name text NOT NULL DEFAULT '' CHECK (length(original_name) <= 255),
    content_type  text NOT NULL,
    size          bigint NOT NULL CHECK (size > 0),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    storage_key   text NOT NULL UNIQUE,
    derived_from  uuid REFERENCES files (id) ON DELETE CASCADE,
    variant       text CHECK (variant IN ('thumbnail')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT files_variant_of_a_source CHECK ((derived_from IS NULL) = (variant IS NULL)),
    CONSTRAINT files_one_variant_each UNIQUE (derived_from, variant)
);

CREATE INDEX files_owner_created ON files (owner_id, created_at DESC, id DESC);
