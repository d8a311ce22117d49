//! The routes as they are registered: the router, and beside it every (method, path) it
//! answers, recorded by the same call that adds the route. The OpenAPI description is checked
//! against this list (`openapi::describes_every_route`), so a route cannot be added without
//! its description.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{get, post, put};

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

    pub fn get<H, T>(mut self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, get(handler));
        self.list.push(("GET", path));
        self
    }

    pub fn post<H, T>(mut self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, post(handler));
        self.list.push(("POST", path));
        self
    }

    pub fn put<H, T>(mut self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, put(handler));
        self.list.push(("PUT", path));
        self
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }
}
