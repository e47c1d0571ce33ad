//! Who connects where: connection `g` goes to pod `g % pods` and joins
//! room `(g / pods) % rooms`, so every room has members on every pod and
//! consecutive connections land in different rooms.

use super::args::Args;

/// The placement of all connections of a run.
#[derive(Clone)]
pub struct Layout {
    /// Connections in all workers.
    pub total: u64,
    /// Pods the connections are spread over.
    pub pods: u64,
    /// Rooms the connections are spread over.
    pub rooms: u64,
    /// Members of each room that send (the first ones by rank).
    pub senders_per_room: u64,
    sizes: Vec<u64>,
}

impl Layout {
    /// A layout; every count is at least one.
    pub fn new(total: u64, pods: u64, rooms: u64, senders_per_room: u64) -> Layout {
        let (pods, rooms) = (pods.max(1), rooms.max(1));
        let mut sizes = vec![0; rooms as usize];
        for g in 0..total {
            sizes[((g / pods) % rooms) as usize] += 1;
        }
        Layout { total, pods, rooms, senders_per_room, sizes }
    }

    /// Reads `--total`, `--pods`, `--rooms` and `--senders-per-room`.
    pub fn from_args(args: &Args) -> Result<Layout, String> {
        Ok(Layout::new(
            args.parse("total", 1)?,
            args.parse("pods", 1)?,
            args.parse("rooms", 1)?,
            args.parse("senders-per-room", u64::MAX)?,
        ))
    }

    /// The same as options for a worker.
    pub fn to_args(&self) -> Vec<String> {
        let spr = self.senders_per_room.to_string();
        let pairs = [
            ("total", self.total.to_string()),
            ("pods", self.pods.to_string()),
            ("rooms", self.rooms.to_string()),
            ("senders-per-room", spr),
        ];
        pairs.into_iter().flat_map(|(k, v)| [format!("--{k}"), v]).collect()
    }

    /// The pod of connection `g`.
    pub fn pod(&self, g: u64) -> u64 {
        g % self.pods
    }

    /// The room of connection `g`.
    pub fn room(&self, g: u64) -> u64 {
        (g / self.pods) % self.rooms
    }

    /// Whether connection `g` is among its room's senders.
    pub fn is_sender(&self, g: u64) -> bool {
        let rank = (g / self.pods / self.rooms) * self.pods + g % self.pods;
        rank < self.senders_per_room
    }

    /// Members of room `r`.
    pub fn room_size(&self, r: u64) -> u64 {
        self.sizes.get(r as usize).copied().unwrap_or(0)
    }

    /// Senders over all rooms.
    pub fn senders(&self) -> u64 {
        (0..self.total).filter(|g| self.is_sender(*g)).count() as u64
    }
}
