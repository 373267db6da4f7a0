-- Files of the batch API (a batch's input, its output and error files): whose they are
-- and what they are; their bytes are kept in the server's files directory.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX files_account ON files (account_id, created_at);

-- Batches, with OpenAI's lifecycle: a status and the time each status was reached.
-- `key_id` is the key that made it, charged with every line as a request of its own.
CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    key_id BIGINT,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    in_progress_at BIGINT,
    expires_at BIGINT NOT NULL,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT
);
CREATE INDEX batches_account ON batches (account_id, created_at);
CREATE INDEX batches_status ON batches (status);

-- One row per line of a batch's input, written when the batch is made: its request (or,
-- for a line that could not be read, none), then its output or error line once done.
-- A line is `pending` until then; a restart runs the pending ones and no other.
CREATE TABLE batch_lines (
    batch_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    custom_id TEXT,
    request TEXT,
    state TEXT NOT NULL,
    result TEXT,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX batch_lines_state ON batch_lines (batch_id, state, line);
