"""Feature families and labels."""
