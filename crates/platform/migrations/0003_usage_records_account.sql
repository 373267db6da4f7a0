-- An account's latest usage rows (`/v1/user/requests`) without scanning everyone's.
CREATE INDEX usage_records_account ON usage_records (account_id, id);
