-- Provisioning: Proxmox nodes, sites (subnet, DNS domain, IP range), plans
-- (size classes), entitlements (group -> plan), quotas and containers, with
-- their desired and observed state and an event history per container.
-- Desired state and quota reservations change in the same transaction;
-- the reconciler (src/provision/) makes Proxmox and dnsmasq match.

CREATE TABLE sites (
    name        TEXT PRIMARY KEY,
    subnet      TEXT NOT NULL,          -- e.g. 10.20.0.0/24
    gateway     TEXT NOT NULL,
    domain      TEXT NOT NULL,          -- e.g. cluster.internal
    range_start TEXT NOT NULL,          -- first address handed to containers
    range_end   TEXT NOT NULL,          -- last one
    created_at  BIGINT NOT NULL
);

CREATE TABLE pve_nodes (
    name            TEXT PRIMARY KEY,   -- the Proxmox node name (pve1)
    site            TEXT NOT NULL REFERENCES sites(name),
    api_url         TEXT NOT NULL,      -- https://host:8006
    token_id        TEXT NOT NULL,      -- user@realm!name
    token_secret    TEXT NOT NULL,      -- sealed (secrets.rs)
    tls_fingerprint TEXT,               -- pinned SHA-256 of the node's certificate
    tls_ca          TEXT,               -- or a PEM CA; neither = system roots
    storage         TEXT NOT NULL,      -- rootfs storage, e.g. local-lvm
    bridge          TEXT NOT NULL,      -- e.g. vmbr0
    template        TEXT NOT NULL,      -- default ostemplate
    features        TEXT NOT NULL DEFAULT '',   -- what containers may use here (nesting,keyctl,…)
    cores           BIGINT NOT NULL,    -- capacity used for placement
    memory_mb       BIGINT NOT NULL,
    disk_gb         BIGINT NOT NULL,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    last_seen_at    BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE plans (
    name        TEXT PRIMARY KEY,       -- nano, small, …
    cores       BIGINT NOT NULL CHECK (cores BETWEEN 1 AND 128),
    memory_mb   BIGINT NOT NULL CHECK (memory_mb BETWEEN 64 AND 1048576),
    swap_mb     BIGINT NOT NULL CHECK (swap_mb BETWEEN 0 AND 1048576),
    disk_gb     BIGINT NOT NULL CHECK (disk_gb BETWEEN 1 AND 65536),
    features    TEXT NOT NULL DEFAULT '',       -- nesting,keyctl,…
    template    TEXT,                   -- ostemplate; NULL = the node's default
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

-- Members of group_name get a container of plan: one each (per-member) or
-- one for the whole group (shared, owned by the group).
CREATE TABLE entitlements (
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE ON UPDATE CASCADE,
    plan       TEXT NOT NULL REFERENCES plans(name),
    shared     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_name, plan)
);

-- Limits per user or group; a missing row means the configured default.
CREATE TABLE quotas (
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('user', 'group')),
    subject_id   TEXT NOT NULL,         -- users.id or groups.id
    containers   BIGINT NOT NULL CHECK (containers >= 0),
    cores        BIGINT NOT NULL CHECK (cores >= 0),
    memory_mb    BIGINT NOT NULL CHECK (memory_mb >= 0),
    disk_gb      BIGINT NOT NULL CHECK (disk_gb >= 0),
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id)
);

CREATE TABLE containers (
    id           TEXT PRIMARY KEY,      -- UUID; carried in the Proxmox tags
    name         TEXT NOT NULL,         -- DNS label, the hostname
    owner_kind   TEXT NOT NULL CHECK (owner_kind IN ('user', 'group', 'none')),
    owner_id     TEXT,                  -- users.id / groups.id; NULL for adopted, unassigned
    origin       TEXT NOT NULL,         -- 'entitlement', 'request', 'adopted'
    entitlement  TEXT,                  -- the granting group's name, for origin 'entitlement'
    plan         TEXT NOT NULL,
    cores        BIGINT NOT NULL,
    memory_mb    BIGINT NOT NULL,
    swap_mb      BIGINT NOT NULL,
    disk_gb      BIGINT NOT NULL,
    features     TEXT NOT NULL DEFAULT '',
    template     TEXT,
    site         TEXT NOT NULL REFERENCES sites(name),
    node         TEXT REFERENCES pve_nodes(name),
    vmid         BIGINT,
    mac          TEXT,
    ip           TEXT,
    desired      TEXT NOT NULL CHECK (desired IN ('running', 'stopped', 'deleted')),
    status       TEXT NOT NULL,         -- pending, creating, starting, ready, stopped, error, deleting, deleted, drifted
    observed     TEXT NOT NULL DEFAULT 'unknown',  -- absent, stopped, running, locked, unknown
    over_quota   BOOLEAN NOT NULL DEFAULT FALSE,
    delete_after BIGINT,                -- grace period end after losing the right to it
    last_error   TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
-- Live containers have unique names, addresses and ids; deleted rows keep
-- their history but release all three.
CREATE UNIQUE INDEX containers_live_name ON containers (name) WHERE status <> 'deleted';
CREATE UNIQUE INDEX containers_ip ON containers (site, ip) WHERE ip IS NOT NULL;
CREATE UNIQUE INDEX containers_mac ON containers (mac) WHERE mac IS NOT NULL;
CREATE UNIQUE INDEX containers_vmid ON containers (node, vmid) WHERE vmid IS NOT NULL;
CREATE INDEX containers_owner ON containers (owner_kind, owner_id);

CREATE TABLE container_events (
    id           TEXT PRIMARY KEY,      -- UUIDv7: ordered by time
    container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,         -- desired, created, started, ready, error, drift, deleted, …
    message      TEXT NOT NULL
);
CREATE INDEX container_events_container ON container_events (container_id, id);

-- Requests beyond a quota, for an admin to approve or decline.
CREATE TABLE container_requests (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    plan       TEXT NOT NULL REFERENCES plans(name),
    reason     TEXT NOT NULL,           -- which limit it exceeds, and by how much
    status     TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'declined')),
    decided_by TEXT,
    decided_at BIGINT,
    created_at BIGINT NOT NULL
);
