-- Strings are what every reader expects; nothing to undo.
SELECT 1;
