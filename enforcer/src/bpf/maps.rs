//! Every map userspace works with, by its name in the object, taken from
//! the loaded object or from a daemon's pins.

use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
};
use enforcer_common::{
    budget::{BUDGET_ADDRS_MAP, BUDGET_USE_MAP, BUDGETS_IN_FORCE_MAP, BUDGETS_MAP},
    events::{EVENTS_MAP, LOST_MAP},
    net::{DNS_GRANTS_MAP, NET_RULES_MAP, RESOLVERS_MAP, UNIX_RULES_MAP},
    policy::{ARMED_MAP, LOCKED_MAP, PROTECTED_MAP, TABLES_MAP, TAG_FILTER_MAP, Tables, TagFilter},
    select::{SELECTED_BLOOM_MAP, SELECTED_MAP},
    tls::{TLS_ADDRS_MAP, TLS_IN_FORCE_MAP, TLS_NAMES_MAP},
};

use super::{
    LoadError,
    handles::{
        ArmedCgroups, BudgetUsage, GrantMaps, LockedAgents, LostEvents, NetRuleMaps, ProtectedInodes, SelectedCgroups,
        TlsMaps,
    },
    map_err,
};

/// A table map: an array-of-maps whose slot 0 holds the current table.
pub(super) type TableMaps = ArrayOfMaps<MapData, Array<MapData, Tables>>;

/// Every map userspace works with, taken from the object or its pins.
pub(super) struct Maps {
    pub(super) tables: TableMaps,
    pub(super) tag_filter: Array<MapData, TagFilter>,
    pub(super) lost: LostEvents,
    pub(super) events: RingBuf<MapData>,
    pub(super) net: NetRuleMaps,
    pub(super) grants: GrantMaps,
    pub(super) protected: ProtectedInodes,
    pub(super) selected: SelectedCgroups,
    pub(super) armed: ArmedCgroups,
    pub(super) locked: LockedAgents,
    pub(super) budget_usage: BudgetUsage,
}

/// The maps userspace works with, by their names in the object.
pub(super) const MAP_NAMES: &[&str] = &[
    TABLES_MAP,
    TAG_FILTER_MAP,
    LOST_MAP,
    EVENTS_MAP,
    NET_RULES_MAP,
    UNIX_RULES_MAP,
    RESOLVERS_MAP,
    DNS_GRANTS_MAP,
    PROTECTED_MAP,
    SELECTED_MAP,
    SELECTED_BLOOM_MAP,
    ARMED_MAP,
    LOCKED_MAP,
    BUDGETS_MAP,
    BUDGETS_IN_FORCE_MAP,
    BUDGET_ADDRS_MAP,
    BUDGET_USE_MAP,
    TLS_ADDRS_MAP,
    TLS_NAMES_MAP,
    TLS_IN_FORCE_MAP,
];

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Self::from(|name| ebpf.take_map(name).ok_or(LoadError::MissingMap(name)))
    }

    pub(super) fn from(
        mut take: impl FnMut(&'static str) -> Result<aya::maps::Map, LoadError>,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            tables: ArrayOfMaps::try_from(take(TABLES_MAP)?).map_err(map_err(TABLES_MAP))?,
            tag_filter: Array::try_from(take(TAG_FILTER_MAP)?).map_err(map_err(TAG_FILTER_MAP))?,
            lost: LostEvents(PerCpuArray::try_from(take(LOST_MAP)?).map_err(map_err(LOST_MAP))?),
            events: RingBuf::try_from(take(EVENTS_MAP)?).map_err(map_err(EVENTS_MAP))?,
            net: NetRuleMaps {
                destinations: LpmTrie::try_from(take(NET_RULES_MAP)?).map_err(map_err(NET_RULES_MAP))?,
                unix: BpfHashMap::try_from(take(UNIX_RULES_MAP)?).map_err(map_err(UNIX_RULES_MAP))?,
                resolvers: BpfHashMap::try_from(take(RESOLVERS_MAP)?).map_err(map_err(RESOLVERS_MAP))?,
                budgets: BpfHashMap::try_from(take(BUDGETS_MAP)?).map_err(map_err(BUDGETS_MAP))?,
                budgets_in_force: Array::try_from(take(BUDGETS_IN_FORCE_MAP)?)
                    .map_err(map_err(BUDGETS_IN_FORCE_MAP))?,
                tls_in_force: Some(Array::try_from(take(TLS_IN_FORCE_MAP)?).map_err(map_err(TLS_IN_FORCE_MAP))?),
            },
            grants: GrantMaps {
                grants: BpfHashMap::try_from(take(DNS_GRANTS_MAP)?).map_err(map_err(DNS_GRANTS_MAP))?,
                budget_addrs: BpfHashMap::try_from(take(BUDGET_ADDRS_MAP)?).map_err(map_err(BUDGET_ADDRS_MAP))?,
                tls: Some(TlsMaps {
                    addrs: BpfHashMap::try_from(take(TLS_ADDRS_MAP)?).map_err(map_err(TLS_ADDRS_MAP))?,
                    names: BpfHashMap::try_from(take(TLS_NAMES_MAP)?).map_err(map_err(TLS_NAMES_MAP))?,
                }),
            },
            protected: ProtectedInodes(Array::try_from(take(PROTECTED_MAP)?).map_err(map_err(PROTECTED_MAP))?),
            selected: SelectedCgroups {
                records: BpfHashMap::try_from(take(SELECTED_MAP)?).map_err(map_err(SELECTED_MAP))?,
                bloom: Array::try_from(take(SELECTED_BLOOM_MAP)?).map_err(map_err(SELECTED_BLOOM_MAP))?,
            },
            armed: ArmedCgroups(BpfHashMap::try_from(take(ARMED_MAP)?).map_err(map_err(ARMED_MAP))?),
            locked: LockedAgents(BpfHashMap::try_from(take(LOCKED_MAP)?).map_err(map_err(LOCKED_MAP))?),
            budget_usage: BudgetUsage(BpfHashMap::try_from(take(BUDGET_USE_MAP)?).map_err(map_err(BUDGET_USE_MAP))?),
        })
    }
}
