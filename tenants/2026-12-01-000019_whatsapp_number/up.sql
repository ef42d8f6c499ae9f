-- What Meta says of a WhatsApp number (`channels::whatsapp_number`): its
-- display number (digits, as Meta's quality webhooks name it), quality
-- rating and messaging limit, and the last quality event. NULL for pages,
-- and for numbers until a connect or a channel check reads them.
ALTER TABLE channels ADD COLUMN IF NOT EXISTS whatsapp_number JSONB;
