-- The tables the gateway made before Alembic: the DDL of `_Base.metadata.create_all` in
-- api/ab/store.py at 03bce86, compiled for sqlite by SQLAlchemy 2.1.9 (whitespace tidied).

CREATE TABLE autopilot_decisions (
    id INTEGER NOT NULL,
    experiment VARCHAR(128) NOT NULL,
    revision INTEGER NOT NULL,
    mode VARCHAR(16) NOT NULL,
    action VARCHAR(16) NOT NULL,
    candidate VARCHAR(128) NOT NULL,
    weight_before FLOAT NOT NULL,
    weight_after FLOAT NOT NULL,
    feedbacks INTEGER NOT NULL,
    reason VARCHAR(1024) NOT NULL,
    numbers JSON NOT NULL,
    applied BOOLEAN NOT NULL,
    applied_revision INTEGER,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (experiment, revision, action, mode)
);

CREATE INDEX ix_autopilot_decisions_experiment ON autopilot_decisions (experiment);

CREATE TABLE experiment_configs (
    revision INTEGER NOT NULL,
    name VARCHAR(128) NOT NULL,
    config JSON NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (revision)
);

CREATE TABLE failed_predictions (
    id INTEGER NOT NULL,
    request_id VARCHAR(128) NOT NULL,
    experiment VARCHAR(128),
    revision INTEGER,
    variant VARCHAR(128) NOT NULL,
    version VARCHAR(64),
    user_hash VARCHAR(64),
    error VARCHAR(64) NOT NULL,
    latency_s FLOAT NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id)
);

CREATE INDEX ix_failed_predictions_experiment ON failed_predictions (experiment);

CREATE INDEX ix_failed_predictions_request_id ON failed_predictions (request_id);

CREATE TABLE leases (
    name VARCHAR(64) NOT NULL,
    owner VARCHAR(128) NOT NULL,
    expires_at DATETIME NOT NULL,
    PRIMARY KEY (name)
);

CREATE TABLE meta (
    "key" VARCHAR(64) NOT NULL,
    value VARCHAR(256) NOT NULL,
    PRIMARY KEY ("key")
);

CREATE TABLE predictions (
    request_id VARCHAR(128) NOT NULL,
    experiment VARCHAR(128),
    revision INTEGER,
    variant VARCHAR(128) NOT NULL,
    version VARCHAR(64) NOT NULL,
    user_hash VARCHAR(64),
    stars JSON NOT NULL,
    probabilities JSON NOT NULL,
    latency_s FLOAT NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (request_id)
);

CREATE INDEX ix_predictions_experiment ON predictions (experiment);

CREATE TABLE feedback (
    id INTEGER NOT NULL,
    request_id VARCHAR(128) NOT NULL,
    item INTEGER NOT NULL,
    stars INTEGER NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (request_id, item),
    FOREIGN KEY(request_id) REFERENCES predictions (request_id)
);

CREATE INDEX ix_feedback_request_id ON feedback (request_id);

CREATE TABLE shadow_predictions (
    id INTEGER NOT NULL,
    request_id VARCHAR(128) NOT NULL,
    version VARCHAR(64) NOT NULL,
    stars JSON,
    latency_s FLOAT NOT NULL,
    error VARCHAR(64),
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(request_id) REFERENCES predictions (request_id)
);

CREATE INDEX ix_shadow_predictions_request_id ON shadow_predictions (request_id);
