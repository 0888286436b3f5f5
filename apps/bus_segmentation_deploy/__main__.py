"""``python -m apps.bus_segmentation_deploy -i IN -o OUT -m MODEL.ts`` (from the repository root)."""

from .app import main

if __name__ == "__main__":
    main()
