//! The routes as they are registered: the router, and beside it every (method, path) it
//! answers, recorded by the same call that adds the route. The OpenAPI description is checked
//! against this list (`openapi::describes_every_route`), so a route cannot be added without
//! its description.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, delete, get, post, put};

use crate::AppState;

pub struct Routes {
    pub(super) router: Router<AppState>,
    pub(super) list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    pub fn get<H, T>(self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add("GET", path, get(handler))
    }

    pub fn post<H, T>(self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add("POST", path, post(handler))
    }

    pub fn put<H, T>(self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add("PUT", path, put(handler))
    }

    pub fn delete<H, T>(self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add("DELETE", path, delete(handler))
    }

    /// Routes `method` of `path` and lists it: the one place both happen.
    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        handler: MethodRouter<AppState>,
    ) -> Routes {
        self.router = self.router.route(path, handler);
        self.list.push((method, path));
        self
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }
}
