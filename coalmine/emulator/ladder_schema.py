"""Tables of the release ladder's Langfuse objects (SQLite): datasets and their items,
the experiment attributes of ingested spans, score configs, annotation queues and the
project's members. Times are stored as the API shows them and as epoch milliseconds.
"""

DATASETS = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,             -- the upsert key of POST /v2/datasets
    description TEXT,
    metadata TEXT,                         -- JSON, NULL when never set
    input_schema TEXT,                     -- JSON Schema, stored as given
    expected_output_schema TEXT,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_items (
    id TEXT PRIMARY KEY,                   -- unique in the project, across datasets
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    status TEXT NOT NULL,                  -- ACTIVE or ARCHIVED
    input TEXT,                            -- JSON; NULL when never set
    expected_output TEXT,
    metadata TEXT,
    source_trace_id TEXT,
    source_observation_id TEXT,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dataset_items_dataset ON dataset_items (dataset_id, created_ms);
-- Every add, update, archive or delete of an item, for reads at a dataset version.
CREATE TABLE IF NOT EXISTS dataset_item_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    valid_from_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    input TEXT,
    expected_output TEXT,
    metadata TEXT,
    source_trace_id TEXT,
    source_observation_id TEXT,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dataset_item_versions_dataset
    ON dataset_item_versions (dataset_id, item_id, valid_from_ms);
"""

EXPERIMENTS = """
-- The langfuse.experiment.* attributes of each ingested span that carries them.
CREATE TABLE IF NOT EXISTS experiment_spans (
    span_id TEXT PRIMARY KEY,              -- observations.id
    trace_id TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    experiment_name TEXT NOT NULL,
    description TEXT,
    metadata TEXT,                         -- JSON object or NULL
    dataset_id TEXT,
    item_id TEXT NOT NULL,                 -- the dataset item id for dataset experiments
    root_observation_id TEXT NOT NULL,     -- the span that is the experiment item
    item_version TEXT,
    item_expected_output TEXT,             -- JSON as sent
    item_metadata TEXT,                    -- JSON object or NULL
    ingested_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS experiment_spans_experiment ON experiment_spans (experiment_id);
CREATE INDEX IF NOT EXISTS experiment_spans_dataset ON experiment_spans (dataset_id);
"""

SCORE_CONFIGS = """
CREATE TABLE IF NOT EXISTS score_configs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,                    -- not unique, as on Langfuse
    data_type TEXT NOT NULL,               -- NUMERIC, BOOLEAN, CATEGORICAL, TEXT
    is_archived INTEGER NOT NULL DEFAULT 0,
    min_value REAL,
    max_value REAL,
    categories TEXT,                       -- JSON list of {value, label} or NULL
    description TEXT,
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
"""

ANNOTATION_QUEUES = """
CREATE TABLE IF NOT EXISTS annotation_queues (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    score_config_ids TEXT NOT NULL,        -- JSON list
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS annotation_queue_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue_id TEXT NOT NULL REFERENCES annotation_queues (id),
    object_id TEXT NOT NULL,               -- not checked and not de-duplicated
    object_type TEXT NOT NULL,             -- TRACE, OBSERVATION, SESSION
    status TEXT NOT NULL,                  -- PENDING, COMPLETED
    completed_at TEXT,
    annotator_user_id TEXT,                -- who completed it; not in the public API
    created_at TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS annotation_queue_items_queue
    ON annotation_queue_items (queue_id, created_ms);
CREATE TABLE IF NOT EXISTS annotation_queue_assignments (
    queue_id TEXT NOT NULL REFERENCES annotation_queues (id),
    user_id TEXT NOT NULL,
    PRIMARY KEY (queue_id, user_id)
);
CREATE TABLE IF NOT EXISTS project_members (
    user_id TEXT PRIMARY KEY,
    name TEXT,
    email TEXT,
    role TEXT NOT NULL                     -- OWNER, ADMIN, MEMBER, VIEWER
);
"""

ALL = (DATASETS, EXPERIMENTS, SCORE_CONFIGS, ANNOTATION_QUEUES)
