"""Getting and checking the data: fetch and safe extraction, demo stand-ins, images, expectations, splits, shards."""
