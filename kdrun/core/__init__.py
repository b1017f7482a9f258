"""What every layer may use: errors, registries, atomic files, the device, the process's place in a job, the console."""
