DROP TRIGGER IF EXISTS late_answer ON conversations;
DROP FUNCTION IF EXISTS keep_late_answer();
