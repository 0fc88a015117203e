"""What calls cost and who pays: the ledger, the cost model, the cloud budget."""
