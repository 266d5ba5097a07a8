"""Disaster recovery: failover by stack switch (failover.py over the Automation API seam, automation.py),
backups to S3-compatible storage (backup.py: a leaf, it runs in the backup image), and the two-site drill
(drill.py, `make drill`). README: disaster recovery."""
