from .cli import main

if __name__ == "__main__":  # not again in a dask or multiprocessing worker (spawn imports __main__ as __mp_main__)
    main()
