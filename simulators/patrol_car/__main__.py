"""``python -m simulators.patrol_car --count 50 --broker mqtt://127.0.0.1:1883``: the car fleet without the
patrolgate CLI, handy when the gateway runs elsewhere (``--help`` lists every option)."""

from simulators.patrol_car.cli import main

if __name__ == "__main__":
    main()
