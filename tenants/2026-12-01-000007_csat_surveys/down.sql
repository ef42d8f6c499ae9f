DROP TABLE IF EXISTS csat_surveys;
