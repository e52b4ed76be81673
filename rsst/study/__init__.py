"""``rsst study``: many runs (methods × settings × seeds) from one study file, run to the end
crash-proof, grouped by run identity, and reported with statistics over seeds."""
