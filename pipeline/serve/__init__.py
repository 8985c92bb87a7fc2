"""What applications read: the pointer and the views (`pointer`), the A/B split (`split`), which versions are kept
(`retention`) and the read-only account of tables, versions and runs (`catalog`)."""
