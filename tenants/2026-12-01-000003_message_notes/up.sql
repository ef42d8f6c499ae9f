-- Private notes: what an agent writes in a conversation for the team, never
-- sent to the customer (`inbox::messages::create_note`). A constant default
-- makes this a change of the catalogue only: no row is rewritten.
ALTER TABLE messages ADD COLUMN private BOOLEAN NOT NULL DEFAULT false;
