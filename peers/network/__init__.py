"""What nodes read and write in each other's buckets: the directory of bucket cards, the followed
validator's feed, the gather of a window's messages, and the signed formats (artefacts, peer lists, records)."""
