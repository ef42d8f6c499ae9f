DROP TABLE IF EXISTS contact_links;
DROP SEQUENCE IF EXISTS contact_people;
