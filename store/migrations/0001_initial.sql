-- Gateways: the phones. Health columns are the last known values; live values come from actors.
CREATE TABLE gateways (
    id                      bigserial PRIMARY KEY,
    device_id               text NOT NULL UNIQUE,
    name                    text NOT NULL,
    status                  text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    last_heartbeat_at       timestamptz,
    messages_sent_today     integer NOT NULL DEFAULT 0,
    messages_received_today integer NOT NULL DEFAULT 0,
    total_messages_sent     bigint NOT NULL DEFAULT 0,
    total_messages_received bigint NOT NULL DEFAULT 0,
    active                  boolean NOT NULL DEFAULT true,
    priority                integer NOT NULL DEFAULT 1,
    metadata                jsonb NOT NULL DEFAULT '{}'::jsonb,
    battery_level           smallint,
    signal_strength         smallint,
    messages_in_queue       integer,
    send_rate_per_minute    integer CHECK (send_rate_per_minute >= 0),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- API keys: only the SHA-256 digest is kept, plus a short prefix to show operators.
CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('gateway', 'client')),
    digest       text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    name         text NOT NULL,
    scopes       text[] NOT NULL DEFAULT '{}',
    gateway_id   bigint REFERENCES gateways (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK ((kind = 'gateway') = (gateway_id IS NOT NULL))
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE UNIQUE INDEX api_keys_one_live_per_gateway ON api_keys (gateway_id) WHERE revoked_at IS NULL;

-- Messages, both directions. The outbound queue is this table, claimed with SKIP LOCKED.
CREATE TABLE messages (
    id               bigserial PRIMARY KEY,
    message_id       text NOT NULL UNIQUE,
    direction        text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    status           text NOT NULL CHECK (status IN ('scheduled', 'queued', 'dispatched', 'sent',
                                                     'delivered', 'failed', 'cancelled', 'received')),
    phone_number     text NOT NULL,
    body             text NOT NULL,
    segments         smallint NOT NULL DEFAULT 1,
    encoding         text NOT NULL DEFAULT 'GSM-7',
    priority         smallint NOT NULL DEFAULT 1,   -- 0 high, 1 normal, 2 low
    reference        text,
    api_key_id       bigint REFERENCES api_keys (id) ON DELETE SET NULL,
    gateway_id       bigint REFERENCES gateways (id) ON DELETE SET NULL,
    attempts         integer NOT NULL DEFAULT 0,
    avoid_gateway_id bigint,
    error_message    text,
    dedup_key        text,
    send_at          timestamptz,
    not_before       timestamptz,
    expires_at       timestamptz,
    dispatched_at    timestamptz,
    sent_at          timestamptz,
    delivered_at     timestamptz,
    failed_at        timestamptz,
    received_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_queue ON messages (priority, id) WHERE status = 'queued';
CREATE INDEX messages_in_flight ON messages (gateway_id) WHERE status = 'dispatched';
CREATE INDEX messages_scheduled ON messages (send_at) WHERE status = 'scheduled';
CREATE INDEX messages_inbound ON messages (received_at DESC, id DESC) WHERE direction = 'inbound';
CREATE INDEX messages_inbound_phone ON messages (phone_number, received_at DESC) WHERE direction = 'inbound';
CREATE INDEX messages_outbound_key ON messages (api_key_id, id DESC) WHERE direction = 'outbound';
CREATE UNIQUE INDEX messages_inbound_dedup ON messages (gateway_id, dedup_key) WHERE direction = 'inbound';

-- Idempotency-Key answers, kept 24 h.
CREATE TABLE idempotency_keys (
    api_key_id   bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status_code  integer NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);

-- One-time passwords: an HMAC of (phone, purpose, code), never the code.
CREATE TABLE otp_codes (
    id                 bigserial PRIMARY KEY,
    phone_number       text NOT NULL,
    purpose            text NOT NULL,
    code_hash          text NOT NULL,
    api_key_id         bigint REFERENCES api_keys (id) ON DELETE SET NULL,
    message_id         text,
    attempts_remaining smallint NOT NULL DEFAULT 3,
    expires_at         timestamptz NOT NULL,
    verified_at        timestamptz,
    superseded_at      timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX otp_codes_open ON otp_codes (phone_number, purpose) WHERE verified_at IS NULL AND superseded_at IS NULL;
CREATE INDEX otp_codes_expires ON otp_codes (expires_at);

-- Each OTP send, for the rolling-hour limits (kept past code cleanup).
CREATE TABLE otp_sends (
    id           bigserial PRIMARY KEY,
    phone_number text NOT NULL,
    api_key_id   bigint,
    sent_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX otp_sends_phone ON otp_sends (phone_number, sent_at);
CREATE INDEX otp_sends_key ON otp_sends (api_key_id, sent_at);

-- Webhooks and their durable delivery outbox.
CREATE TABLE webhooks (
    id          bigserial PRIMARY KEY,
    api_key_id  bigint REFERENCES api_keys (id) ON DELETE CASCADE,
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret_key  text,
    active      boolean NOT NULL DEFAULT true,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    event            text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, id DESC);

-- Counters kept as events happen, per day, so stats never scan the messages table.
CREATE TABLE daily_counters (
    day   date NOT NULL,
    name  text NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, name)
);

-- When each scheduled job last ran (catch-up after a restart, once across nodes).
CREATE TABLE scheduler_runs (
    job         text PRIMARY KEY,
    last_run_at timestamptz NOT NULL
);
