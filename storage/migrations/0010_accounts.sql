-- Accounts: users, roles, the links between them, and refresh-token sessions.

CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL
);

INSERT INTO roles (name, description) VALUES
    ('customer', 'Buys things: places and follows their own orders'),
    ('staff', 'Runs the shop: manages the catalog and every order'),
    ('admin', 'Runs the system: manages accounts and roles, reads the audit log');

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         citext NOT NULL,
    name          text NOT NULL,
    password_hash text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_length CHECK (length(email) BETWEEN 3 AND 254),
    CONSTRAINT users_name_length CHECK (length(name) BETWEEN 1 AND 200)
);

CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE user_roles (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL REFERENCES roles (name),
    granted_at timestamptz NOT NULL DEFAULT now(),
    granted_by bigint REFERENCES users (id) ON DELETE SET NULL,
    PRIMARY KEY (user_id, role)
);

-- A user with their roles, as the service reads one.
CREATE VIEW user_accounts AS
SELECT u.id, u.email, u.name, u.active, u.created_at, u.updated_at,
       array(SELECT r.role FROM user_roles r WHERE r.user_id = u.id ORDER BY r.role) AS roles
FROM users u;

-- One row per refresh token. A login starts a family; each refresh marks its token used and
-- adds the successor to the family. Presenting a used token again means it leaked: the whole
-- family is revoked. The access token issued with each refresh token is remembered so that
-- revoking a session can also deny-list the access tokens it handed out.
CREATE TABLE refresh_tokens (
    id                uuid PRIMARY KEY,
    family_id         uuid NOT NULL,
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash        bytea NOT NULL,
    access_token_id   uuid NOT NULL,
    access_expires_at timestamptz NOT NULL,
    issued_at         timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    used_at           timestamptz,
    revoked_at        timestamptz,
    revoked_reason    text,
    CONSTRAINT refresh_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT refresh_tokens_revoked_reason CHECK (
        revoked_reason IN ('logout', 'reuse', 'deactivated', 'password')
    ),
    CONSTRAINT refresh_tokens_revoked_together CHECK (
        (revoked_at IS NULL) = (revoked_reason IS NULL)
    )
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id, access_expires_at);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
