-- Uploaded files: the metadata. The bytes live in the file store under `storage_key`, a name
-- the server generated; the client's file name is kept only as data, never used as a path.
CREATE TABLE files (
    id            uuid PRIMARY KEY,
    owner_id      text NOT NULL,
    original_name text NOT NULL DEFAULT '' CHECK (length(original_name) <= 255),
    content_type  text NOT NULL,
    size          bigint NOT NULL CHECK (size > 0),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    storage_key   text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX files_owner_created ON files (owner_id, created_at DESC, id DESC);
