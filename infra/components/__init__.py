"""One ComponentResource per tier (type token `qwen-serving:<module>:<Name>`)."""
