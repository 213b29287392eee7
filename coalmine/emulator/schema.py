"""Tables of the emulator's store (SQLite). One section per API area.

Times are stored twice: ISO 8601 text as the API shows it, and epoch milliseconds
(`*_ms`) for ordering, filtering and cursors.
"""

PROMPTS = """
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,              -- 'text' or 'chat'; the same on every version
    prompt TEXT NOT NULL,            -- JSON: a string or a list of messages
    config TEXT NOT NULL,            -- JSON
    labels TEXT NOT NULL,            -- JSON list, in Langfuse's order; unique per name
    tags TEXT NOT NULL,              -- JSON list, the same on every version
    commit_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_ms INTEGER NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    UNIQUE (name, version)
);
"""

OBSERVATIONS = """
CREATE TABLE IF NOT EXISTS observations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,     -- insertion order; observation_tags refers to it
    id TEXT NOT NULL UNIQUE,                    -- OTel span id (hex); a re-sent span replaces
    trace_id TEXT NOT NULL,
    parent_observation_id TEXT,                 -- parent span id as sent; NULL for none
    type TEXT NOT NULL,                         -- SPAN, GENERATION, EVENT, AGENT, TOOL, ...
    name TEXT,
    start_time TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_time TEXT,
    end_ms INTEGER,
    completion_start_time TEXT,
    completion_start_ms INTEGER,
    level TEXT NOT NULL DEFAULT 'DEFAULT',      -- DEBUG, DEFAULT, WARNING, ERROR
    status_message TEXT,
    version TEXT,
    environment TEXT NOT NULL DEFAULT 'default',
    user_id TEXT,
    session_id TEXT,
    is_root INTEGER NOT NULL,                   -- 1: no parent span, or marked app root
    public INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',            -- JSON list, as sent on this span
    release TEXT,
    trace_name TEXT,
    prompt_id TEXT,                             -- prompts.id of (prompt_name, prompt_version)
    prompt_name TEXT,                           -- GENERATION observations only
    prompt_version INTEGER,
    model TEXT,                                 -- provided model name
    model_parameters TEXT,                      -- JSON object or NULL
    usage_details TEXT NOT NULL DEFAULT '{}',   -- JSON {key: int}; total added if missing
    cost_details TEXT NOT NULL DEFAULT '{}',    -- JSON {key: USD}; total added if missing
    total_cost REAL,                            -- cost_details.total, NULL without costs
    input_tokens INTEGER NOT NULL DEFAULT 0,    -- sum of usage keys containing "input"
    output_tokens INTEGER NOT NULL DEFAULT 0,   -- sum of usage keys containing "output"
    total_tokens INTEGER,                       -- usage_details.total
    input_cost REAL NOT NULL DEFAULT 0,         -- sum of cost keys containing "input"
    output_cost REAL NOT NULL DEFAULT 0,        -- sum of cost keys containing "output"
    metadata TEXT NOT NULL DEFAULT '{}',        -- JSON object
    input TEXT,                                 -- raw string as sent
    output TEXT,                                -- raw string as sent
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_start ON observations (start_ms DESC, id DESC);
CREATE INDEX IF NOT EXISTS observations_trace ON observations (trace_id);
-- Metrics v2 (metrics_sql.py): covers the common queries (arms by tags, error rate by
-- tags and level, latency, cost, traces), which read it alone, grouped by tags and level
-- in index order; its distinct tags texts are read with one seek each.
CREATE INDEX IF NOT EXISTS observations_metrics
    ON observations (tags, level, start_ms, is_root, type, end_ms, total_cost, trace_id);
-- One row per distinct tag of an observation, with the observation's sort key, so a
-- tag filter can walk one tag's observations newest first and stop at the page size.
CREATE TABLE IF NOT EXISTS observation_tags (
    seq INTEGER NOT NULL REFERENCES observations (seq) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    start_ms INTEGER NOT NULL,                  -- observations.start_ms
    id TEXT NOT NULL,                           -- observations.id
    PRIMARY KEY (tag, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS observation_tags_seq ON observation_tags (seq);
CREATE INDEX IF NOT EXISTS observation_tags_start
    ON observation_tags (tag, start_ms DESC, id DESC);
"""

SCORES = """
CREATE TABLE IF NOT EXISTS scores (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,          -- the upsert key of POST /scores
    name TEXT NOT NULL,
    value REAL,                       -- NUMERIC; BOOLEAN as 0 or 1; NULL otherwise
    string_value TEXT,                -- CATEGORICAL, TEXT, CORRECTION; 'True'/'False'
    data_type TEXT NOT NULL,          -- NUMERIC, BOOLEAN, CATEGORICAL, TEXT, CORRECTION
    source TEXT NOT NULL,             -- API, ANNOTATION (EVAL: Langfuse's evaluators)
    trace_id TEXT,                    -- the subject: a trace (with an optional
    observation_id TEXT,              -- observation), a session or a dataset run
    session_id TEXT,
    dataset_run_id TEXT,
    comment TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',  -- JSON object
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
CREATE INDEX IF NOT EXISTS scores_observation ON scores (observation_id);
CREATE INDEX IF NOT EXISTS scores_name ON scores (name, timestamp_ms);
"""

ALL = (PROMPTS, OBSERVATIONS, SCORES)
