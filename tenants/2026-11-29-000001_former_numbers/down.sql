DROP TABLE contact_former_numbers;
