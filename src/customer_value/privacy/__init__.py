"""The privacy duties of profiling for direct marketing: objections and missing consent honoured, customers
forgotten on request (a suppression list of keyed hashes), pseudonymised extracts (docs/privacy.md)."""
