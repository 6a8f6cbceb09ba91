-- Requests beyond a quota are either for a new container or for resizing
-- an existing one to a bigger plan (container_requests.name names it).
ALTER TABLE container_requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'create' CHECK (kind IN ('create', 'resize'));

-- Collaborators: users besides the owner who may log in to a container
-- (no sudo: that stays the owner's).
CREATE TABLE container_collaborators (
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (container_id, user_id)
);
CREATE INDEX container_collaborators_user ON container_collaborators (user_id);
