"""Teachers: the recipe-hash store, the facts cached beside a checkpoint, what a teacher knows, and its plots."""
