"""Tables of the emulator's store (SQLite). One section per API area.

Times are stored twice: ISO 8601 text as the API shows it, and epoch milliseconds
(`*_ms`) for ordering, filtering and cursors.
"""

PROMPTS = """
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    prompt TEXT NOT NULL,            -- JSON: a string or a list of messages
    config TEXT NOT NULL,            -- JSON
    labels TEXT NOT NULL,            -- JSON list
    tags TEXT NOT NULL,              -- JSON list
    commit_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (name, version)
);
"""

OBSERVATIONS = """
CREATE TABLE IF NOT EXISTS observations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    trace_id TEXT NOT NULL,
    parent_observation_id TEXT,
    type TEXT NOT NULL,
    name TEXT,
    start_time TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_time TEXT,
    end_ms INTEGER,
    completion_start_time TEXT,
    level TEXT NOT NULL DEFAULT 'DEFAULT',
    status_message TEXT,
    version TEXT,
    environment TEXT NOT NULL DEFAULT 'default',
    user_id TEXT,
    session_id TEXT,
    is_root INTEGER NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',  -- JSON list, as sent on this span
    release TEXT,
    trace_name TEXT,
    prompt_id TEXT,
    prompt_name TEXT,
    prompt_version INTEGER,
    model TEXT,
    usage_details TEXT NOT NULL DEFAULT '{}',   -- JSON
    cost_details TEXT NOT NULL DEFAULT '{}',    -- JSON
    total_cost REAL,
    metadata TEXT NOT NULL DEFAULT '{}',        -- JSON
    input TEXT,                                  -- JSON
    output TEXT                                  -- JSON
);
CREATE INDEX IF NOT EXISTS observations_start ON observations (start_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS observations_trace ON observations (trace_id);
CREATE TABLE IF NOT EXISTS observation_tags (
    seq INTEGER NOT NULL REFERENCES observations (seq) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, seq)
) WITHOUT ROWID;
"""

SCORES = """
CREATE TABLE IF NOT EXISTS scores (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    value REAL,
    string_value TEXT,
    data_type TEXT NOT NULL,
    source TEXT NOT NULL,
    trace_id TEXT,
    observation_id TEXT,
    session_id TEXT,
    dataset_run_id TEXT,
    comment TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    config_id TEXT,
    queue_id TEXT,
    author_user_id TEXT,
    environment TEXT NOT NULL DEFAULT 'default',
    timestamp TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_time ON scores (timestamp_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS scores_trace ON scores (trace_id);
CREATE INDEX IF NOT EXISTS scores_name ON scores (name, timestamp_ms);
"""

ALL = (PROMPTS, OBSERVATIONS, SCORES)
