-- Who was taken off is not kept; nothing to undo.
SELECT 1;
