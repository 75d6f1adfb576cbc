"""The console's one time format, with seconds and the timezone, for every admin page
(``FORMAT_MODULE_PATH``): what the admin's own date columns and read-only fields show."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s T"
