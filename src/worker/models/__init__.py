"""Model files, in one place: roles, file names, the manifest, the volume, fetching, a job's models, the CLI.
Importing the package (as the job contract does) imports neither huggingface_hub, requests nor the settings."""
