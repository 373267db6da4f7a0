-- Where a request's token counts came from: tokenfab's engine, an upstream's report,
-- counting with the model's tokenizer, or an estimate from the text's length.
ALTER TABLE usage_records ADD COLUMN source TEXT NOT NULL DEFAULT 'engine';
