"""The commands that read the config or the ledger without serving: report, whatif, plan, calibrate."""
