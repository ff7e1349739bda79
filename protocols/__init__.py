"""Label designs, splits, the linear-SVM protocol, ISIC metrics and statistics. No torch here."""
